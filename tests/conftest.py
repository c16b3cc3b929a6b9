pytest_plugins = ["tests.fixtures.ml", "tests.fixtures.s3"]
