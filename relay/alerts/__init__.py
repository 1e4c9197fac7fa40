"""Alerts: tell the operator when an account needs action (rules -> tracker -> channels)."""
