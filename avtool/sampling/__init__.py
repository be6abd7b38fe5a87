"""Schedules, samplers, guidance and the step runner."""
