"""The Choreographer agent: world model, exploration, skills and their actor-critics."""
