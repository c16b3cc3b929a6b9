pytest_plugins = ["tests.fixtures.ml", "tests.fixtures.s3", "deepseek_testbed.pytest_plugin", "pytester"]
