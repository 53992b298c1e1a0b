"""Tests for sfu.rtp."""
