"""The application around the engine: the batch runner, `refundry test`, `refundry diff`,
customer messages and the report. Used by the CLI (and later the service); never imports it.
"""
