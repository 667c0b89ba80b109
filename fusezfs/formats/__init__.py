"""Pure, versioned encoders and decoders of everything fusezfs writes to a pool file."""
