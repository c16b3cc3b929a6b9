pytest_plugins = ["tests.fixtures.ml"]
