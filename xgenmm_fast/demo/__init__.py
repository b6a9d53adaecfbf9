"""Bundled synthetic demo data (shapes, colours, counts) and the demo command."""
