"""Bulk SMS campaigns: the audience (segment filters or a CSV), sandboxed
templates rendered per recipient with their encoding, segments and cost, the
sending loop (paced to the sender's rate, quiet hours, exactly once per
recipient), delivery receipts, replies and the report."""
