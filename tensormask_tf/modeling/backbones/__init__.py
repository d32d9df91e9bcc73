"""Backbones registered with Model Garden's backbone factory."""
