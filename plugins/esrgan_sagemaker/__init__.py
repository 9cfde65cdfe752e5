"""SageMaker bring-your-own-container model server around the project's engine."""
