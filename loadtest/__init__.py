"""Benchmarks (not tests): each scenario prints a markdown report and saves it under loadtest/reports/."""
