"""OAuth providers: the interface (`base`), built-ins (microsoft, google, generic), plug-in loading
(`registry`)."""
