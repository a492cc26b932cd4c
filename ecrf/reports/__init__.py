"""Report output formats: CSV tables and PNG plots of the projections' report rows."""
