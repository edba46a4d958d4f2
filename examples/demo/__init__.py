"""Two beat replicas with SafeRedBeatScheduler failing over, on a Redis the demo starts."""
