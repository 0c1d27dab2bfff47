"""Activation: channels, templates, send guardrails, the send pipeline and delivery receipts."""
