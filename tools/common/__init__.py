"""Helpers only the commands use: a finished run folder (`finished_run`), drawing samples (`drawing`), FID/KID."""
