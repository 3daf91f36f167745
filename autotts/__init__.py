"""autotts: offline discovery of test-time-scaling controllers by replaying recorded reasoning branches."""

__version__ = "0.1.0"
