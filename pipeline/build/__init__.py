"""Running the stages over a build: the build configuration (config), what one build plans and shares
(plan), the Annotator that runs a batch (annotate), the stage cache, ordered batching and thread
budgets. Prefect-free: flows/ wraps it in a flow and tasks."""
