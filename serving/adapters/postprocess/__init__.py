"""Pure post-processing rules: raw model outputs -> the JSON schemas of seed 003.

One module per concern (pose, clothing, vehicle, damage, demographics, depth, action, threat, ...);
each rule is a small pure function with hand-built tests, no torch import at module level.
"""
