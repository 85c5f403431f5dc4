"""Reading a run directory into results: tables, files, report.html, tracking."""
