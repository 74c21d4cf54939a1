"""Test doubles for what cannot be installed on CI machines (named as such; never used by segrt itself)."""
