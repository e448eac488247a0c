//! Username/password checks against a mosquitto_passwd file (not built yet).
