"""The paper's real-world pipelines, built on models that work offline."""
