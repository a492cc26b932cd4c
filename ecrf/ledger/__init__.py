"""The tamper-evident ledger: hash chain, running head, signed seals, verification."""
