"""HTML handlers, one module per audience: auth, end-user devices, admin, onboarding."""
