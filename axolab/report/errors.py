"""The one error a report raises for input it cannot use."""

from __future__ import annotations


class ReportError(Exception):
    """Bad input to a report (no runs, a missing directory, an unreadable file); the message
    names the path and what is wrong with it."""
