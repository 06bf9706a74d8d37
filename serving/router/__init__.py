"""Detection -> enrichment fan-out (fanout.py), frame -> risk event pipeline (pipeline.py), the risk
prompt / parsing / rules around the LLM (risk.py) and their request and result shapes (schemas.py)."""
