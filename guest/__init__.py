"""The guest side: vCPUs with an MMU check against stage 2, a scheduler of tasks, and the
handlers for the two APF notifications."""
