"""Where the ratios come from: schedules, presets, their resolution for a model, calibration
and heat maps."""
