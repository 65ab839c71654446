"""The commands on top of both stages: sample, evaluate, complete, bench, and the recommender experiment.

`tools.common` holds the helpers only these commands use; what the stages share lives in `foundation`.
"""
