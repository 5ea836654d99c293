from django.db import migrations, models

import chat.models


class Migration(migrations.Migration):
    dependencies = [("chat", "0001_initial")]

    operations = [
        migrations.AddField(
            model_name="conversation",
            name="epoch",
            field=models.CharField(
                db_default="", default=chat.models.new_epoch, max_length=16
            ),
        ),
    ]
