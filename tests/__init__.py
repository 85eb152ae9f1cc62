"""The test suite (a package, so test files share tests/helpers.py by relative import)."""
