"""The ranking service: `flywheel serve` (app), its work without HTTP (service), features, models, exposure."""
