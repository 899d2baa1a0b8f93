"""Hydra launcher that trains a sweep's interface variants together on one upstream forward per batch."""
