"""The core engine: request and decision models, the ruleset language and loader, facts and
periods, the matching backends and the combining rule. It imports nothing from the rest of
refundry (records, plugins, app, cli); a test enforces that.
"""
