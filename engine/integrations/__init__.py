"""rerankrt.engine.integrations — front-ends on existing scale-out engines (Ray); each is an optional extra."""
