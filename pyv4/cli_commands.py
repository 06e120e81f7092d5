"""Registers the interactive commands (chat, run, bench) with the CLI."""
