"""Helpers of recipes/transfer_study.py: plan (run specs), execute (runs, resumable), report (RESULTS.md)."""
