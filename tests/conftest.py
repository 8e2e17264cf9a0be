"""Test-wide setup: tests in subfolders (which mirror the source tree) import the shared
helpers in tests/support.py as `support`; pytest puts this folder on sys.path for that."""
