from django.db import migrations, models

import queued_storage.fields


class Migration(migrations.Migration):
    dependencies = [("gallery", "0001_initial")]

    operations = [
        migrations.AddField(
            model_name="upload",
            name="image",
            field=queued_storage.fields.QueuedImageField(
                blank=True, max_length=255, upload_to="images"
            ),
        ),
        migrations.AlterField(
            model_name="upload",
            name="file",
            field=queued_storage.fields.QueuedFileField(
                blank=True, max_length=255, upload_to="uploads"
            ),
        ),
        migrations.AddField(
            model_name="upload",
            name="created",
            field=models.DateTimeField(auto_now_add=True, null=True),
        ),
    ]
