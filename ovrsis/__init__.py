"""The house's ground floor: what every package of the project (taxonomy, pipeline, audit, flows,
piseg) may import, and which imports none of them."""
