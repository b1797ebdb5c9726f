//! The controller on its own: plans, commands, restarts.
