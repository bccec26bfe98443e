"""Constants shared by the test fixtures."""

TEST_KEY = "theralake-test-key-0123456789abcdef"
