"""Requests through NATS JetStream: ``refundry publish`` feeds a work-queue stream from any
source plugin, ``refundry worker`` processes decide and record them into the shared store
(docs/deployment.md). ``streams`` names and creates the streams both sides use.
"""
