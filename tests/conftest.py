pytest_plugins = [
    "tests.fixtures.ml",
    "tests.fixtures.s3",
    "tests.fixtures.chart_rbac",
    "tests.fixtures.operator",
    "deepseek_testbed.pytest_plugin",
    "pytester",
]
