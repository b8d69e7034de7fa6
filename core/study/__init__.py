"""A study: its folder and database, the scan pipeline, typed results, review, verdicts, jobs, report."""
