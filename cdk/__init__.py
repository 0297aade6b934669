"""Infrastructure: one construct per capability, composed by stack.py."""
