"""Task tables, split readers with pre-flight checks, and the decoded-image cache."""
