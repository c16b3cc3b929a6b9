pytest_plugins = ["tests.fixtures.ml", "deepseek_testbed.pytest_plugin", "pytester"]
