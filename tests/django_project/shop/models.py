from django.db import models


class Payment(models.Model):
    """The application's own data, written in the same transaction as the message to the workflow."""

    order_id = models.CharField(max_length=100)
    status = models.CharField(max_length=20)
