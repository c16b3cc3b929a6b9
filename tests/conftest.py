pytest_plugins = [
    "tests.fixtures.ml",
    "tests.fixtures.s3",
    "tests.fixtures.operator",
    "deepseek_testbed.pytest_plugin",
    "pytester",
]
